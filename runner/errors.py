"""Errors of the runner side (providers, SSH, runs), under the project's tree in planner/errors.py:

    GpuBudgetError                     exit 1
    ├── InputError                     exit 2 (planner/errors.py)
    │   ├── ConfigError                $BUDGET_HOME/config.yaml or a flag that completes it
    │   └── LedgerError                $BUDGET_HOME/ledger.db cannot be opened or read
    ├── ProviderError                  a cloud or host API refused or failed
    │   ├── AuthError                  credentials missing, expired or not allowed
    │   ├── CapacityError              no capacity for that instance type / spot price
    │   ├── QuotaError                 an account limit (vCPUs, instances, spot requests)
    │   ├── NotFoundError              e.g. no AMI matches
    │   └── TransientError             throttling, 5xx, connection drops: the only kind retried
    ├── RemoteError                    the instance over SSH: unreachable, refused, host key mismatch
    │   ├── NotReadyError              it does not answer yet (booting): the caller may wait and retry
    │   └── BootstrapError             infra/bootstrap.sh exited non-zero
    ├── WorkerError                    the worker crashed or rejected its job
    └── RunError                       a run cannot be found, resumed or stopped as asked

botocore and paramiko exceptions are translated where they enter (cloud/aws.py, cloud/remote.py)."""

from __future__ import annotations

from planner.errors import GpuBudgetError, InputError


class ConfigError(InputError):
    pass


class LedgerError(InputError):
    pass


class ProviderError(GpuBudgetError):
    pass


class AuthError(ProviderError):
    pass


class CapacityError(ProviderError):
    pass


class QuotaError(ProviderError):
    pass


class NotFoundError(ProviderError):
    pass


class TransientError(ProviderError):
    pass


class RemoteError(GpuBudgetError):
    pass


class NotReadyError(RemoteError):
    pass


class RefusedError(NotReadyError):
    """The host answered and refused the connection: nothing listens on its SSH port (yet)."""


class BootstrapError(RemoteError):
    pass


class WorkerError(GpuBudgetError):
    pass


class RunError(GpuBudgetError):
    pass
