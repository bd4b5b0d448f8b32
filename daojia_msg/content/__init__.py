"""What message content may be: the rich-text markup of rich msgtypes."""
