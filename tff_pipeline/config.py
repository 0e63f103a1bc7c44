"""Typed experiment configuration, built from flags or by hand (notebooks).

Each setting is declared once, as a field made by `settings.setting`: its
flag name, type, default, help text and checks. The command-line flags,
`hparams.csv` and docs/flags.md are generated from these declarations. Each
dataclass validates itself at construction and reports a bad value as an
`errors.UsageError` naming the flag. Names follow the flags of
google-research/federated (`client_epochs_per_round`, `server_optimizer`...).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from tff_pipeline import errors
from tff_pipeline import faults as faults_lib
from tff_pipeline import heterogeneity as heterogeneity_lib
from tff_pipeline import settings
from tff_pipeline.settings import Check, setting

def _require(ok: bool, flag: str, value: object, expected: str) -> None:
  if not ok:
    raise errors.UsageError(f'--{flag}={value} {expected}')


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(settings.Validated):
  """A `tff.learning.optimizers` optimizer, chosen by name.

  The settings' flags are prefixed by `role` ('client' or 'server'), which
  also names them in error messages.
  """

  name: str = setting(
      'sgd', flag='{role}_optimizer',
      choices='tff_pipeline.algorithms.optimizers:OPTIMIZERS',
      help='{Role} optimizer: {choices}')
  learning_rate: float = setting(
      0.1, flag='{role}_learning_rate', checks=[settings.POSITIVE_FINITE],
      help='{Role} learning rate.')
  momentum: float = setting(
      0.0, flag='{role}_momentum',
      checks=[Check(lambda v: 0 <= v < 1, 'must be in [0, 1)')],
      help='{Role} heavy-ball momentum (sgd only).')
  epsilon: float = setting(
      1e-3, flag='{role}_epsilon', checks=[settings.POSITIVE_FINITE],
      help='{Role} adaptivity constant tau (adam, yogi, adagrad).')
  role: str = settings.internal('client', 'prefixes the flags of the block')


@dataclasses.dataclass(frozen=True)
class AggregationConfig(settings.Validated):
  """Settings of the model-update aggregator and of its wrappers."""

  compensation_normalize: bool = setting(
      True,
      help='compensated aggregator: normalise each update by its local '
      'steps and rescale by tau_eff (FedNova).')
  compensation_q: float = setting(
      0.0, checks=[settings.at_least(0, 'must be >= 0')],
      help='compensated aggregator: weight clients by (L_i / mean L)^q, '
      'L_i the loss of the incoming model on their data (q-FFL); '
      '0 turns it off.')
  compensation_max_factor: float = setting(
      3.0, checks=[settings.at_least(1, 'must be >= 1')],
      help='compensated aggregator: clip the loss factor (L_i / mean '
      'L)^q to [1/c, c] for this c, so no client takes over a round.')
  trim_fraction: float = setting(
      0.1, checks=[Check(lambda v: 0 <= v < 0.5, 'must be in [0, 0.5)')],
      help='trimmed_mean: share of values trimmed at each end, in '
      '[0, 0.5).')
  clip_norm: float = setting(
      0.0, checks=[settings.at_least(0, 'must be >= 0 (0 turns it off)')],
      help='Clip each client update to this L2 norm, and drop (weight 0) '
      'updates with NaN or inf values; 0 turns it off.')
  zeroing: bool = setting(
      False,
      help='Zero out updates whose norm is far above the recent ones '
      '(adaptive 98th percentile, as in tff.learning), and updates with NaN '
      'or inf values.')
  dp_noise_multiplier: float = setting(
      0.0, checks=[settings.at_least(0, 'must be >= 0 (0 turns DP off)')],
      help='Differential privacy: Gaussian noise stddev / clip norm; > 0 '
      'turns DP on (DP-FedAvg, McMahan et al. 2018).')
  dp_clip_norm: float = setting(
      1.0, checks=[settings.POSITIVE_FINITE],
      help='DP: L2 clip norm of each client update (initial value with '
      '--dp_adaptive_clipping).')
  dp_adaptive_clipping: bool = setting(
      False,
      help='DP: adapt the clip norm to the median update norm '
      '(Andrew et al. 2021).')
  dp_delta: float = setting(
      0.0,
      checks=[Check(lambda v: 0 <= v < 1,
                    'must be in [0, 1) (0 means 1/num_clients)')],
      help='DP: delta of the reported (epsilon, delta); 0 means '
      '1/num_clients.')
  secure_aggregation: bool = setting(
      False,
      help='Sum the (weighted) updates with TFF\'s secure sum, with '
      'adaptive bounds.')
  compression: bool = setting(
      False,
      help='Quantize update tensors of more than 20000 values to '
      '--compression_bits bits before summing.')
  compression_bits: int = setting(
      8, checks=[Check(lambda v: 1 <= v <= 16, 'must be in 1..16')],
      help='compression: bits per quantized value.')
  zeroing_quantile: float = setting(
      0.98,
      checks=[Check(lambda v: settings.finite(v) and 0 < v < 1,
                    'must be in (0, 1)')],
      help='zeroing: the quantile of recent update norms that the '
      'threshold tracks (times 2, plus 1); lower it below 1 - the share of '
      'faulty clients, or their huge updates raise the threshold past them.')

  @property
  def dp(self) -> bool:
    return self.dp_noise_multiplier > 0


def _zero_or(low_open: float, high: float) -> Check:
  """0 (off), or a value in (low_open, high]."""
  return Check(
      lambda v: settings.finite(v) and (v == 0 or low_open < v <= high),
      f'must be in ({low_open:g}, {high:g}] (0 turns it off)')


@dataclasses.dataclass(frozen=True)
class SelectionConfig(settings.Validated):
  """Which clients train in a round (docs/selection.md). The defaults are
  today's uniform sampling; `scheduling/selection.py` implements them."""

  client_selection: str = setting(
      'uniform', choices='tff_pipeline.scheduling.selection:SELECTORS',
      help='How each round\'s clients are chosen: {choices}')
  poc_candidates: int = setting(
      0, checks=[settings.at_least(0, 'must be >= 0')],
      help='power_of_choice: d, the candidates sampled in proportion to '
      'their data, of which the clients_per_round with the highest loss '
      'train; at least --clients_per_round; 0 means twice it.')
  selection_loss_examples: int = setting(
      64, checks=[settings.at_least(0, 'must be >= 0 (0: all)')],
      help='Evaluate the global model\'s loss of a client (power_of_choice, '
      'oort, --feedback) on at most this many of its examples, drawn from '
      '(seed, round, client); 0: all of them (on the paper CNN, all cost '
      '27% of a round for oort, 64 cost 4%: docs/selection.md).')
  oort_alpha: float = setting(
      2.0, checks=[settings.at_least(0, 'must be >= 0')],
      help='oort: alpha of the system factor (T / t_i)^alpha that lowers '
      'the utility of clients slower than the preferred round time T.')
  oort_preferred_seconds: float = setting(
      0.0, checks=[settings.at_least(0, 'must be >= 0')],
      help='oort: T, the preferred round duration in simulated seconds; 0 '
      'means the median of the devices\' full-work times.')
  oort_exploration: float = setting(
      0.9, checks=[settings.fraction()],
      help='oort: initial share eps_0 of the round\'s clients explored '
      'among never-seen clients; eps = max(eps_0 * decay^round, min).')
  oort_exploration_decay: float = setting(
      0.98, checks=[settings.fraction()],
      help='oort: factor applied to the exploration share each round.')
  oort_exploration_min: float = setting(
      0.2, checks=[settings.fraction()],
      help='oort: the exploration share never falls below this.')
  oort_cutoff: float = setting(
      0.95, checks=[settings.fraction()],
      help='oort: clients whose utility is at least this times the '
      'exploited quota\'s lowest are sampled in proportion to utility.')


@dataclasses.dataclass(frozen=True)
class FeedbackConfig(settings.Validated):
  """Whether and how much lagging clients get more local work
  (`scheduling/feedback.py`, docs/selection.md)."""

  feedback: bool = setting(
      False,
      help='Give each round\'s clients whose loss of the global model L_i '
      '(measured before the round) lags the population\'s Lbar up to '
      '--feedback_max_factor times their local steps, (L_i / '
      'Lbar)^--feedback_power, within what their device can run by the '
      'deadline (docs/selection.md).')
  feedback_power: float = setting(
      1.0, checks=[settings.at_least(0, 'must be >= 0')],
      help='feedback: beta of the work factor (L_i / Lbar)^beta.')
  feedback_max_factor: float = setting(
      2.0, checks=[settings.at_least(1, 'must be >= 1')],
      help='feedback: the most a lagging client\'s local steps are '
      'multiplied by.')


@dataclasses.dataclass(frozen=True)
class SchedulingConfig(settings.Validated):
  """Simulated time: devices, the round policy and its deadline, the target.

  See docs/simulated_time.md. The defaults keep every earlier result: the
  `budgets` policy runs today's local-step budgets and the clock only
  measures.
  """

  round_policy: str = setting(
      'budgets', choices='tff_pipeline.scheduling.policies:ROUND_POLICIES',
      help='How a round treats slow clients: {choices}')
  deadline_seconds: float = setting(
      0.0, checks=[settings.at_least(0, 'must be > 0 (0: no fixed deadline)')],
      help='deadline_* policies: the round\'s deadline in simulated '
      'seconds (or give --deadline_quantile).')
  deadline_quantile: float = setting(
      0.0, checks=[_zero_or(0, 1)],
      help='deadline_* policies: the deadline is this quantile of the '
      'sampled clients\' full-work times, in (0, 1] (or give '
      '--deadline_seconds).')
  oversample_factor: float = setting(
      1.3, checks=[settings.at_least(1, 'must be >= 1')],
      help='deadline_drop: sample ceil(factor * --clients_per_round) '
      'clients and keep the first --clients_per_round to finish (1.3 as in '
      'FedScale and Oort).')
  device_profile: str = setting(
      'capacity', choices='tff_pipeline.scheduling.devices:DEVICE_PROFILES',
      help='Per-client devices (speed, bandwidth): {choices}')
  device_file: str = setting(
      '', help='device_profile=file: CSV (header client,gflops,up_mbps,'
      'down_mbps) or JSON list of such objects, one per client.')
  device_gflops: float = setting(
      1.0, checks=[settings.POSITIVE_FINITE],
      help='Training speed of a full-capacity device, GFLOP/s (FLOPs '
      'counted as in tff_pipeline/models/flops.py).')
  up_bandwidth_mbps: float = setting(
      5.0, checks=[settings.POSITIVE_FINITE],
      help='Client upload bandwidth, Mbit/s.')
  down_bandwidth_mbps: float = setting(
      20.0, checks=[settings.POSITIVE_FINITE],
      help='Client download bandwidth, Mbit/s.')
  device_lognormal_sigma: float = setting(
      0.5, checks=[settings.at_least(0, 'must be >= 0')],
      help='lognormal device profile: sigma of the log of each factor.')
  target_accuracy: float = setting(
      0.0, checks=[_zero_or(0, 1)],
      help='Report the rounds and simulated seconds until the evaluation '
      'accuracy first reaches this value, in (0, 1]; 0 turns it off.')
  selection: SelectionConfig = settings.nested(SelectionConfig())
  feedback: FeedbackConfig = settings.nested(FeedbackConfig())


def _numbers(value: Any, kind: type) -> tuple | None:
  """`value` (a list flag's strings, or numbers) as a tuple of `kind`, or
  None if an item is not one (for int, a whole number: not 10.5)."""
  try:
    items = tuple(value)
  except TypeError:
    return None
  numbers = []
  for item in items:
    if isinstance(item, bool):
      return None
    try:
      number = kind(item)
      if kind is int and number != float(item):
        return None
    except (TypeError, ValueError, OverflowError):
      return None
    numbers.append(number)
  return tuple(numbers)


def _is_width_list(value: Any) -> bool:
  widths = _numbers(value, float)
  return (bool(widths)
          and all(settings.finite(w) and 0 < w <= 1 for w in widths)
          and all(a > b for a, b in zip(widths, widths[1:])))


def _is_mix(value: Any) -> bool:
  counts = _numbers(value, int)
  return counts is not None and all(c >= 0 for c in counts)


def _listed(value: Any) -> str:
  return ','.join(str(v) for v in value)


@dataclasses.dataclass(frozen=True)
class ModelWidthConfig(settings.Validated):
  """Width-scaled sub-models for weak clients (HeteroFL; docs/heterofl.md).

  The default, `full`, trains the whole model on every client: every
  earlier result is unchanged.
  """

  model_width_policy: str = setting(
      'full', choices='tff_pipeline.scheduling.widths:WIDTH_POLICIES',
      help='Which width of the model each client trains (HeteroFL, Diao et '
      'al. 2021): {choices}')
  model_widths: tuple[float, ...] = setting(
      (1.0, 0.5, 0.25, 0.125, 0.0625),
      checks=[Check(_is_width_list,
                    'must be a non-empty list of widths in (0, 1], from '
                    'the widest to the narrowest, without repeats',
                    show=_listed)],
      help='The widths a client may train, each in (0, 1], widest first: a '
      'width w keeps the first ceil(w * units) units of every hidden layer.')
  model_width_mix: tuple[str, ...] = setting(
      (),
      checks=[Check(_is_mix, 'must be a list of client counts (integers '
                    '>= 0)', show=_listed)],
      help='mix policy: how many clients train each of --model_widths, in '
      'its order; the counts sum to --num_clients, and clients are assigned '
      'by a permutation drawn from --seed.')
  model_width_scaler: bool = setting(
      True,
      help='HeteroFL\'s scaler (on, as in the paper): a width-w client '
      'divides its hidden layers\' outputs by w while it trains; each '
      'width\'s sub-model is evaluated the same way (the global model, width '
      '1, is unaffected). Without batch norm it enlarges narrow clients\' '
      'steps: docs/heterofl.md.')

  @property
  def enabled(self) -> bool:
    """Whether clients train sub-models (any policy but `full`)."""
    return self.model_width_policy != 'full'

  @property
  def widths(self) -> tuple[float, ...]:
    """`model_widths` as floats."""
    return _numbers(self.model_widths, float)

  @property
  def mix(self) -> tuple[int, ...]:
    """`model_width_mix` as client counts."""
    return _numbers(self.model_width_mix, int)


def _is_experiment_name(name: Any) -> bool:
  return (isinstance(name, str)
          and bool(re.fullmatch(r'[A-Za-z0-9._-]+', name))
          and name not in ('.', '..'))


@dataclasses.dataclass(frozen=True)
class TrainingConfig(settings.Validated):
  """Everything the training loop needs besides the task.

  Checked at construction; `check_num_clients` checks it against the task.
  """

  experiment_name: str = setting(
      flag_default=None,
      checks=[Check(_is_experiment_name,
                    'must be non-empty, use only letters, digits, ".", "_" '
                    'and "-", and not be "." or ".." (which would leave the '
                    'run\'s directories)', show=repr)],
      help='Name of the run; outputs go to <root_output_dir>/{results,'
      'checkpoints,logdir}/<experiment_name>. Defaults to the name '
      'of the --flagfile (without .flags); required otherwise.')
  root_output_dir: str = setting(
      flag_default='/tmp/tff_pipeline',
      checks=[Check(bool, 'must be a directory path', show=repr)],
      help='Root directory of all outputs.')
  total_rounds: int = setting(10, checks=[settings.POSITIVE],
                              help='Number of federated rounds.')
  clients_per_round: int = setting(
      10, checks=[settings.POSITIVE],
      help='Clients sampled uniformly (without replacement) per round.')
  client_epochs_per_round: int = setting(
      1, checks=[settings.POSITIVE], help='Local epochs per round.')
  client_batch_size: int = setting(
      10,
      checks=[Check(lambda v: v >= 1 or v == -1,
                    'must be positive, or -1 for full-batch steps')],
      help='Local batch size; -1 means full-batch steps.')
  client_optimizer: OptimizerConfig = settings.nested(
      OptimizerConfig(), spread_in_hparams=True)
  server_optimizer: OptimizerConfig = settings.nested(
      OptimizerConfig(learning_rate=1.0, role='server'),
      spread_in_hparams=True)
  algorithm: str = setting(
      'fedavg', choices='tff_pipeline.algorithms:ALGORITHMS',
      help='Learning algorithm: {choices}')
  aggregator: str = setting(
      'mean', choices='tff_pipeline.aggregators:AGGREGATORS',
      help='Aggregation of model updates: {choices}')
  rounds_per_eval: int = setting(
      1, checks=[settings.POSITIVE],
      help='Evaluate the global model every this many rounds.')
  rounds_per_checkpoint: int = setting(
      10, checks=[settings.POSITIVE],
      help='Save a checkpoint every this many rounds.')
  seed: int = setting(
      0, checks=[Check(lambda v: 0 <= v < 2**31, 'must be in [0, 2**31)')],
      help='Seed of every random choice: data, initialisation, client '
      'sampling, shuffling.')
  heterogeneity: heterogeneity_lib.ComputeHeterogeneity = settings.nested(
      heterogeneity_lib.ComputeHeterogeneity())
  aggregation: AggregationConfig = settings.nested(AggregationConfig())
  proximal_strength: float = setting(
      0.0, checks=[settings.at_least(0, 'must be >= 0')],
      help='fedprox: mu of the proximal term (mu/2)||w - w_global||^2.')
  faults: faults_lib.FaultInjection = settings.nested(
      faults_lib.FaultInjection())
  scheduling: SchedulingConfig = settings.nested(SchedulingConfig())
  model_width: ModelWidthConfig = settings.nested(ModelWidthConfig())

  def validate(self, num_clients: int | None = None) -> None:
    """Checks the settings (as at construction), and `num_clients` if given.

    Raises:
      errors.UsageError: naming the flag of the first bad value.
    """
    settings.check_fields(self)
    check_combinations(self)
    if num_clients is not None:
      self.check_num_clients(num_clients)

  def check_num_clients(self, num_clients: int) -> None:
    """Checks the config against the task's (or --num_clients') clients."""
    _require(num_clients >= 1, 'num_clients', num_clients, 'must be positive')
    _require(
        self.clients_per_round <= num_clients, 'clients_per_round',
        self.clients_per_round,
        f'must not exceed --num_clients={num_clients}',
    )
    mix = self.model_width.mix
    if self.model_width.model_width_policy == 'mix':
      _require(sum(mix) == num_clients, 'model_width_mix',
               _listed(self.model_width.model_width_mix),
               f'must sum to --num_clients={num_clients} (it sums to '
               f'{sum(mix)})')

  def hparams(self) -> dict[str, Any]:
    """The `hparams.csv` row of a run started from Python (not flags)."""
    return settings.hparams(self)


NUM_CLIENTS = settings.Setting(
    help='Number of clients the data is split into.', flag='num_clients',
    flag_default=100, kind='integer')
"""The --num_clients flag of the binaries. It sets the task's number of
clients (`MnistTaskSpec.num_clients`, `RegressionSpec.num_clients`);
`TrainingConfig.check_num_clients` checks the config against it."""


@dataclasses.dataclass(frozen=True)
class RunOptions:
  """How a run is executed, not what it computes: keyword arguments of
  `training.loop.run_federated` that have flags, under the same names."""

  allow_flag_changes: bool = setting(
      False, help='Resume from checkpoints made with other hyperparameters.')
  progress: bool = setting(True, help='Show a progress bar on stderr.')
  workers: tuple[str, ...] = setting(
      (),
      help='host:port of TFF workers started with `python -m '
      'experiments.run_worker`; each round\'s clients are split '
      'across them. Empty: one local worker. Plaintext unless the '
      '--worker_tls_* flags are given (docs/security.md).')
  worker_connect_timeout: float = setting(
      30.0,
      help='Seconds to wait for a worker to become reachable before '
      'failing with an error that names it.')
  worker_tls_ca: str = setting(
      '', help='PEM CA certificate that signed the --workers\' '
      'certificates; turns on TLS to them.')
  worker_tls_cert: str = setting(
      '', help='PEM client certificate of this coordinator, for workers '
      'started with --tls_client_ca.')
  worker_tls_key: str = setting(
      '', help='PEM private key of --worker_tls_cert.')


# ----------------------------------------------------------------------------
# Which settings combine: every such rule of the pipeline, in one place.
# ----------------------------------------------------------------------------

SUM_REPLACEMENTS = ('--dp_noise_multiplier', '--secure_aggregation',
                    '--compression')
"""Flags that each replace the sum at the core of the mean."""

AGGREGATORS_OF_INDIVIDUAL_UPDATES = ('median', 'trimmed_mean')
"""Aggregators that need every client's update, not a sum of them."""


def check_combinations(config: TrainingConfig) -> None:
  """Raises `errors.UsageError` if settings of `config` do not go together.

  `TrainingConfig` calls it at construction, so the builders of aggregators
  and algorithms never see a config that breaks these rules.
  """
  agg = config.aggregation
  on = dict(zip(SUM_REPLACEMENTS, (agg.dp, agg.secure_aggregation,
                                   agg.compression)))
  replacing = [flag for flag in SUM_REPLACEMENTS if on[flag]]
  if len(replacing) > 1:
    raise errors.UsageError(
        f'{" and ".join(replacing)} cannot be combined: each replaces the '
        'sum at the core of the mean; choose one')
  if config.aggregator in AGGREGATORS_OF_INDIVIDUAL_UPDATES and replacing:
    raise errors.UsageError(
        f'--aggregator={config.aggregator} needs the individual updates and '
        f'cannot be combined with {replacing[0]}')
  if config.algorithm == 'fedsgd':
    if config.aggregator == 'compensated':
      raise errors.UsageError(
          '--aggregator=compensated normalises local steps, but '
          '--algorithm=fedsgd runs none; use fedavg or fedprox')
    if config.faults.corrupts_updates:
      raise errors.UsageError(
          f'--faulty_mode={config.faults.mode} corrupts updates, which '
          '--algorithm=fedsgd cannot simulate; use fedavg or fedprox')
  _check_scheduling(config)
  _check_selection(config)
  _check_widths(config)


DEADLINE_POLICIES = ('deadline_drop', 'deadline_partial')
"""Round policies that need --deadline_seconds or --deadline_quantile (those
of `scheduling.policies.ROUND_POLICIES` declared `uses_deadline`)."""


def _check_scheduling(config: TrainingConfig) -> None:
  """The rules of the simulated-time settings (docs/simulated_time.md)."""
  s = config.scheduling
  policy = f'--round_policy={s.round_policy}'
  if s.round_policy in DEADLINE_POLICIES:
    if s.deadline_seconds > 0 and s.deadline_quantile > 0:
      raise errors.UsageError(
          f'{policy}: give --deadline_seconds or --deadline_quantile, not '
          'both')
    if not s.deadline_seconds > 0 and not s.deadline_quantile > 0:
      raise errors.UsageError(
          f'--deadline_seconds={s.deadline_seconds} must be > 0 with '
          f'{policy} (or give --deadline_quantile in (0, 1])')
  elif s.deadline_seconds > 0 or s.deadline_quantile > 0:
    raise errors.UsageError(
        f'--deadline_seconds/--deadline_quantile apply to the deadline_* '
        f'round policies, not {policy}')
  if (config.heterogeneity.straggler_fraction > 0
      and s.round_policy != 'budgets'):
    raise errors.UsageError(
        f'--straggler_fraction draws local-step budgets, which only '
        f'--round_policy=budgets runs, not {policy}; use --device_profile '
        'for slow devices')
  if (s.device_profile == 'file') != bool(s.device_file):
    raise errors.UsageError(
        f'--device_file={s.device_file!r} and --device_profile='
        f'{s.device_profile} go together: give both or neither')


def _check_selection(config: TrainingConfig) -> None:
  """The rules of client selection and feedback (docs/selection.md)."""
  s = config.scheduling
  d = s.selection.poc_candidates
  size = config.clients_per_round
  if s.round_policy == 'deadline_drop':
    # As `scheduling.policies.RoundPolicy.sample_size` over-samples.
    size = math.ceil(round(s.oversample_factor * size, 9))
  if s.selection.client_selection == 'power_of_choice' and 0 < d < size:
    raise errors.UsageError(
        f'--poc_candidates={d} must be at least the {size} clients a round '
        f'samples (--clients_per_round={config.clients_per_round}'
        + (f', --oversample_factor={s.oversample_factor}'
           if s.round_policy == 'deadline_drop' else '') + ')')
  if s.feedback.feedback and config.algorithm == 'fedsgd':
    raise errors.UsageError(
        '--feedback gives lagging clients more local steps, but '
        '--algorithm=fedsgd runs none; use fedavg or fedprox')


def _check_widths(config: TrainingConfig) -> None:
  """The rules of width-scaled sub-models (docs/heterofl.md).

  Sub-models send their updates with coordinate masks to the masked mean
  (`aggregators/masked_mean.py`), built around our client work. What cannot
  consume masks, or would count the zeros of clients that do not hold a
  coordinate, is refused.
  """
  w = config.model_width
  policy = f'--model_width_policy={w.model_width_policy}'
  if (w.model_width_policy == 'mix') != bool(w.model_width_mix):
    raise errors.UsageError(
        f'--model_width_mix={_listed(w.model_width_mix)} and '
        '--model_width_policy=mix go together: give both or neither')
  if w.model_width_mix and len(w.mix) != len(w.widths):
    raise errors.UsageError(
        f'--model_width_mix={_listed(w.model_width_mix)} must give one '
        f'count per width of --model_widths={_listed(w.model_widths)}')
  if not w.enabled:
    return
  s = config.scheduling
  agg = config.aggregation
  if (w.model_width_policy == 'capacity'
      and s.round_policy not in DEADLINE_POLICIES):
    raise errors.UsageError(
        f'{policy} fits each client\'s width to the round\'s deadline; use '
        f'--round_policy=deadline_partial or deadline_drop, not '
        f'{s.round_policy}')
  refusals = [
      (config.algorithm == 'fedsgd', f'--algorithm={config.algorithm}',
       'its TFF client work sends no coordinate masks; use fedavg or '
       'fedprox'),
      (config.aggregator != 'mean', f'--aggregator={config.aggregator}',
       'sub-models are averaged by the masked mean, which --aggregator=mean '
       'selects'),
      (agg.dp, f'--dp_noise_multiplier={agg.dp_noise_multiplier}',
       'the DP mean divides by a fixed client count, not by each '
       'coordinate\'s holders'),
      (agg.compression, '--compression',
       'quantizing full-shape updates leaks the zeros of coordinates a '
       'client does not hold into the others'),
      (agg.clip_norm > 0, f'--clip_norm={agg.clip_norm}',
       'it would clip the coordinate masks with the update'),
      (agg.zeroing, '--zeroing',
       'it would measure the coordinate masks with the update'),
      (s.feedback.feedback, '--feedback',
       'its step bounds are computed for the full model'),
      (s.selection.client_selection == 'oort',
       '--client_selection=oort',
       'its system utility uses the full model\'s round times'),
  ]
  for refused, flag, why in refusals:
    if refused:
      raise errors.UsageError(f'{flag} cannot be combined with {policy}: '
                              f'{why}')
