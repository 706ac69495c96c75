"""Ground floor: helpers every other package may import (atomic file writing, file digests, the one-line config
error); imports none of them."""
