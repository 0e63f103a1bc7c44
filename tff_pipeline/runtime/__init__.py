"""Execution runtimes: local and remote TFF workers, and their clean-up."""

from tff_pipeline.runtime.contexts import install_managed_default_context
from tff_pipeline.runtime.contexts import parse_worker_addresses
from tff_pipeline.runtime.contexts import Runtime
from tff_pipeline.runtime.contexts import serve_worker
from tff_pipeline.runtime.contexts import shutdown_default_runtime
from tff_pipeline.runtime.contexts import use_local_runtime
from tff_pipeline.runtime.tls import ClientTls
from tff_pipeline.runtime.tls import ServerTls
from tff_pipeline.runtime.workers import INTER_OP_THREADS_ENV
from tff_pipeline.runtime.workers import INTRA_OP_THREADS_ENV
from tff_pipeline.runtime.workers import live_worker_pids
from tff_pipeline.runtime.workers import stop_all_workers
from tff_pipeline.runtime.workers import thread_env
from tff_pipeline.runtime.workers import WorkerProcess

# Importing the pipeline replaces TFF's default context, which would start an
# unmanaged worker process on first use, with one whose worker we own.
install_managed_default_context()
