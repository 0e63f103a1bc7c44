"""The lessons by name, in teaching order, and running several at once."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tff_pipeline import registry
from tff_pipeline import runtime as runtime_lib
from tff_pipeline.lessons import base
from tff_pipeline.lessons import differential_privacy
from tff_pipeline.lessons import fedsgd
from tff_pipeline.lessons import heterogeneous_compute
from tff_pipeline.lessons import local_steps

LessonFn = Callable[..., base.LessonResult]

# (result type, lesson) in teaching order; the result type's `name` and
# `title` name and describe the lesson.
_IN_ORDER: tuple[tuple[type[base.LessonResult], LessonFn], ...] = (
    (fedsgd.FedSgdResult, fedsgd.fedsgd_equals_gd),
    (local_steps.LocalStepsResult, local_steps.local_steps_drift),
    (heterogeneous_compute.ComputeHeterogeneityResult,
     heterogeneous_compute.compute_heterogeneity),
    (differential_privacy.DpNoiseResult, differential_privacy.dp_noise),
)

LESSONS: registry.Registry[LessonFn] = registry.Registry('lesson',
                                                         '--lessons')
for _result_type, _lesson in _IN_ORDER:
  LESSONS.register(_result_type.name, _result_type.title)(_lesson)

# The lesson names in teaching order.
LESSON_ORDER: tuple[str, ...] = tuple(
    result_type.name for result_type, _ in _IN_ORDER)


def run_lessons(names: Sequence[str], root_dir: str, *, small: bool = False,
                seed: int = 0, runtime: runtime_lib.Runtime | None = None
                ) -> list[base.LessonResult]:
  """Runs the named lessons in order on one runtime.

  Args:
    names: Lesson names (`LESSONS`); unknown names raise `UsageError`.
    root_dir: Root output directory of the runs.
    small: Run the fast versions.
    seed: Seed of every lesson.
    runtime: TFF runtime to use; one local worker is started for all the
      lessons (and stopped) when None.

  Returns:
    The results, in the order of `names`.
  """
  builders = [LESSONS.get(name) for name in names]
  with base.runtime_scope(runtime) as rt:
    return [build(root_dir, small=small, seed=seed, runtime=rt)
            for build in builders]
