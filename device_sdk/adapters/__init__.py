"""I/O adapters: the only modules that touch dnspython, paho-mqtt and sockets."""
