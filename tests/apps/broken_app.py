"""An app that fails to import, as a typo'd dependency would."""

import fastapi  # noqa: F401
import not_a_real_module  # noqa: F401

app = fastapi.FastAPI()
