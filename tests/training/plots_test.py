"""What the plots put on their axes."""

from tff_pipeline.training import plots

HISTORY = [
    {'round_num': 1.0, 'time/elapsed_seconds': 4.0, 'eval/accuracy': 0.5},
    {'round_num': 2.0, 'time/elapsed_seconds': 9.5},
    {'round_num': 3.0, 'time/elapsed_seconds': 12.0, 'eval/accuracy': 0.8},
]


def _capture(monkeypatch):
  calls = []

  def plot_series(path, series, **kwargs):
    calls.append((path, series, kwargs))
    return True

  monkeypatch.setattr(plots, 'plot_series', plot_series)
  return calls


def test_runs_against_simulated_time(monkeypatch):
  calls = _capture(monkeypatch)
  plots.plot_runs('x.png', {'a': HISTORY}, 'eval/accuracy', title='t',
                  simulated_time=True)
  (_, series, kwargs), = calls
  assert series == {'a': [(4.0, 0.5), (12.0, 0.8)]}
  assert kwargs['xlabel'] == 'simulated seconds'
  plots.plot_runs('x.png', {'a': HISTORY}, 'eval/accuracy', title='t')
  assert calls[1][1] == {'a': [(1.0, 0.5), (3.0, 0.8)]}
  assert calls[1][2]['xlabel'] == 'round'


def test_history_plots_accuracy_in_simulated_time(monkeypatch):
  calls = _capture(monkeypatch)
  written = plots.plot_history(HISTORY, lambda name: f'/r/{name}', 'exp')
  assert written == ['/r/accuracy.png', '/r/accuracy_vs_simulated_time.png']
  assert calls[-1][1] == {
      'global model, evaluation data': [(4.0, 0.5), (12.0, 0.8)]}


def test_a_real_png_against_simulated_time(tmp_path):
  path = str(tmp_path / 'p.png')
  assert plots.plot_series(path, {'a': [(0.5, 1.0), (7.25, 2.0)]}, title='t',
                           ylabel='y', xlabel='simulated seconds')
  with open(path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_history_plots_each_widths_accuracy(monkeypatch):
  calls = _capture(monkeypatch)
  history = [
      {'round_num': 1.0, 'eval/accuracy': 0.5, 'eval_width/0.5/accuracy': 0.4,
       'eval_width/0.0625/accuracy': 0.2, 'eval_width/0.5/loss': 1.0},
      {'round_num': 2.0, 'eval/accuracy': 0.7, 'eval_width/0.5/accuracy': 0.6,
       'eval_width/0.0625/accuracy': 0.3},
  ]
  written = plots.plot_history(history, lambda name: f'/r/{name}', 'exp')
  assert written[-1] == '/r/accuracy_by_width.png'
  assert calls[-1][1] == {
      'global model (width 1)': [(1.0, 0.5), (2.0, 0.7)],
      'width 0.5 sub-model': [(1.0, 0.4), (2.0, 0.6)],
      'width 0.0625 sub-model': [(1.0, 0.2), (2.0, 0.3)]}
