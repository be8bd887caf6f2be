"""wsgate's benchmark suite: wsgate against nginx, in front of the same upstreams, on loopback.

Run it with ``python -m bench`` (``make bench``); ``python -m bench --help`` lists the options.
Every comparison is run interleaved (the two proxies alternate, several rounds) and medians
are reported, because the machine is shared and numbers are noisy.
"""
