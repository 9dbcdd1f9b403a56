"""SEPA files and their bookkeeping: pain.008 writer, camt reader, XSD validation, the SEPA ledger.

Everything here is I/O; the rules that decide who is debited live in ``tasks/sepa_rules.py``.
"""
