"""The provider simulator."""
