"""The shared contract: typed messages, the array codec, ZeroMQ transport, MQTT topics, errors.

Never imports psychopy or torch.
"""
