"""Ground floor: helpers any package may import (atomic writes, digests, ConfigError); imports none of them."""
