"""``msgctl``: the command-line tool for trying and operating a node."""
