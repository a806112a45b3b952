"""Outbound webhooks: the relay as a sender (contract section 9).

``service`` runs every endpoint's deliveries; ``client`` makes one attempt;
``model`` and ``log`` say what is kept and where; ``api`` answers the admin
API. The rules (retry schedule, signatures, address checks, what starts
when) are pure, in ``relay.core.delivery``, ``relay.core.whsec`` and
``relay.core.addresses``.
"""
