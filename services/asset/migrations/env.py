from pixsim_asset.repository import metadata
from pixsim_common.migrations import run_env

run_env(metadata)
