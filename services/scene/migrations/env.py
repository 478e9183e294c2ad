from pixsim_common.migrations import run_env
from pixsim_scene.repository import metadata

run_env(metadata)
