from pixsim_common.migrations import run_env
from pixsim_provider_gateway.repository import metadata

run_env(metadata)
