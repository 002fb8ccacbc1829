"""Stand-ins for the services that reach customers, for the demo and the tests."""
