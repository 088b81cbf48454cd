"""The built-in domains, one module each: flight (and its 2-8 feature variants), hotel and webshop.

Each module defines ``domain``; ``ppl_models.get_domain`` builds them by name.
"""
__all__ = ["flight", "hotel", "webshop"]
