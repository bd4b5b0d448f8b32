"""C2S message buses behind IMessageBus."""
