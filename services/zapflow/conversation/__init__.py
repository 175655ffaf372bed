"""The conversation service: turns customer messages into the bot's answers."""
