"""The local stack of ``make run``: supervisord runs the services on 127.0.0.1.

Not part of the shipped package (``pipeline``, ``serving``): this is the launcher a checkout
uses. ``python -m stack start|stop|status`` (``make run``, ``make stop``, ``make status``);
:mod:`stack.supervisor` is the program model every service is declared with.
"""
