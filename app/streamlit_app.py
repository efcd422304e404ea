"""Entry point of the Streamlit app: ``make app`` or ``streamlit run app/streamlit_app.py``.

Settings come from ``HISTO_MODEL_URI``, ``HISTO_SAMPLES_URI`` and
``HISTO_RESULTS_URI`` (or ``-- --model-uri ... --samples-uri ... --results-uri ...``
after the script name); the pages live in ``app.views``.
"""

import sys
from pathlib import Path

# `streamlit run` puts this file's folder (app/) on sys.path, not the repository
# root that holds the `app` package and the units it reads.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import histo_common.tensorflow_env  # noqa: E402, F401  (sets up TensorFlow first)
from app.views import main  # noqa: E402

main()
