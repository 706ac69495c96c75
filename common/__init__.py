"""Ground floor: helpers every other package may import (atomic file writing, file digests); imports none of them."""
