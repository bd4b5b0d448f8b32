"""Logic: login, sessions, routing, delivery, inbox. Reaches connections only through IClientConnection."""
