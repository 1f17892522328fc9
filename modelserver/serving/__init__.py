"""The server: the ZeroMQ dispatch over ``wire.model`` commands and its saved model versions."""
