from pixsim_common.migrations import run_env
from pixsim_job.repository import metadata

run_env(metadata)
