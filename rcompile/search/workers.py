"""Where candidates are scored in parallel: local worker processes (`--jobs N`) or the actors
of a Ray cluster (`--ray ADDRESS`). Each worker builds one `Evaluator` from the search's
`EvaluationData` (model, layers, calibration statistics, decoded validation data, FP32
outputs), which it gets once: in the processes' start-up arguments, or from Ray's object
store, where it is put once for every actor. Both give the evaluations in the order asked."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor

from rcompile.errors import UserError
from rcompile.search.evaluator import Configuration, Evaluation, EvaluationData, Evaluator
from rcompile.sessions import current_provider, use_provider

_WORKER: Evaluator | None = None


def _start_worker(data: EvaluationData, provider: str) -> None:
    global _WORKER
    use_provider(provider)
    _WORKER = Evaluator(data)


def _evaluate_in_worker(configuration: Configuration) -> Evaluation:
    return _WORKER.evaluate(configuration)


class LocalWorkers:
    """`count` worker processes on this machine."""

    def __init__(self, data: EvaluationData, count: int) -> None:
        self.count = count
        self._pool = ProcessPoolExecutor(
            count, initializer=_start_worker, initargs=(data, current_provider())
        )

    def map(self, configurations: list[Configuration]) -> list[Evaluation]:
        return list(self._pool.map(_evaluate_in_worker, configurations))

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


class _RayEvaluator:
    """A Ray actor holding one Evaluator."""

    def __init__(self, data: EvaluationData, provider: str) -> None:
        use_provider(provider)
        self.evaluator = Evaluator(data)

    def evaluate(self, configuration: Configuration) -> Evaluation:
        return self.evaluator.evaluate(configuration)


class RayWorkers:
    """`count` actors of one CPU each on a Ray cluster (`count` 0: one per CPU of the
    cluster). `address`: `local` starts a Ray instance on this machine for the search, `auto`
    joins the running cluster, anything else is the address of one."""

    def __init__(self, data: EvaluationData, count: int, address: str) -> None:
        try:
            import ray
        except ImportError:
            raise UserError(
                'the Ray scale-out needs ray; install it with pip install -e ".[ray]"'
            ) from None
        self._ray = ray
        self._actors: list = []
        self._started = not ray.is_initialized()
        if self._started:
            try:
                ray.init(
                    address=None if address == "local" else address,
                    num_cpus=os.cpu_count() if address == "local" else None,
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                )
            except (ConnectionError, ValueError, RuntimeError) as error:
                first = (str(error).strip().splitlines() or [""])[0]
                raise UserError(f"cannot join the Ray cluster at {address!r}: {first}") from None
        cpus = int(ray.cluster_resources().get("CPU", 0))
        self.count = count or max(cpus, 1)
        if self.count > cpus:
            self.close()
            raise UserError(
                f"--jobs {self.count} needs {self.count} CPUs; the Ray cluster has {cpus}"
            )
        shared = ray.put(data)
        actor = ray.remote(num_cpus=1)(_RayEvaluator)
        provider = current_provider()
        self._actors = [actor.remote(shared, provider) for _ in range(self.count)]

    def map(self, configurations: list[Configuration]) -> list[Evaluation]:
        actors = self._actors
        pending = [
            actors[index % len(actors)].evaluate.remote(configuration)
            for index, configuration in enumerate(configurations)
        ]
        return self._ray.get(pending)

    def close(self) -> None:
        for actor in self._actors:
            self._ray.kill(actor)
        if self._started:
            self._ray.shutdown()
