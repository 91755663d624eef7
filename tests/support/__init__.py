"""Helpers that tests import (fixtures stay in conftest modules, which nothing imports)."""
