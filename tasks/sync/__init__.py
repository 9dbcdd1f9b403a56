"""The sync engine: plan by difference, exactly-once loads, protocol and quarantine, for any
partner (:class:`~tasks.sync.partner.Partner`). Nothing in it knows a particular partner."""
