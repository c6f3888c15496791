"""`python -m export --model DIR --backend auto|onnxruntime|tensorrt|torch --out DIR`."""

import sys

from export.build import main

sys.exit(main())
