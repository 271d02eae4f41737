"""How particular clouds want the device to speak: Azure IoT Hub and AWS IoT Core.

A dialect builds the pieces of an ordinary :class:`~device_sdk.ClientConfig`
(identity, user names, topics, TLS options) the way that cloud documents them;
the recovery path underneath is the same for every hub.
"""
