"""Fakes of the network edge (other companies' APIs), started by the tests that use them."""
