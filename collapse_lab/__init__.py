__version__ = "0.0.1"
from .core import *
from .prompts import *
from .hooks import *
from . import storage
from .interventions import *
from .generation import *
from . import metrics, viz, rl
from .steering import *
from .grid import *
from .bandit import *
from .patching import *
from . import ioi
from .patching_lab import *
from .training import *
from .icl import *
from .clamping_lab import *
from .steering_lab import *
