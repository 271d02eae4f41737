"""The pure core: decisions without I/O.

``failover`` decides where to connect next, ``retry`` how long to wait,
``liveness`` when a link is dead and ``outcomes`` what a reason code means.
Nothing here opens a socket or reads a clock: time is always passed in.
"""
