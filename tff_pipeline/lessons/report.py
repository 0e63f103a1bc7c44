"""The lessons' report: one PNG per lesson and a Markdown table."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

from tff_pipeline import errors
from tff_pipeline.lessons import base
from tff_pipeline.training import outputs


def png_bytes(result: base.LessonResult) -> bytes:
  """The lesson's figure as PNG bytes (for files and notebooks)."""
  buffer = io.BytesIO()
  result.figure().savefig(buffer, format='png')
  return buffer.getvalue()


def _cell(text: str) -> str:
  """Escapes the pipes of a Markdown table cell."""
  return text.replace('|', '\\|')


def summary_table(results: Sequence[base.LessonResult]) -> str:
  """A Markdown table: lesson, closed-form check, numbers, whether it holds."""
  lines = ['| lesson | closed-form check | numbers | holds |',
           '| --- | --- | --- | --- |']
  for result in results:
    conditions = '; '.join(
        f'{text} ({"yes" if ok else "NO"})'
        for text, ok in result.checks().items())
    lines.append(f'| {_cell(result.title)} | {_cell(conditions)} | '
                 f'{_cell(result.numbers())} | '
                 f'{"yes" if result.check() else "**NO**"} |')
  return '\n'.join(lines) + '\n'


def write_report(results: Sequence[base.LessonResult],
                 directory: str) -> list[str]:
  """Writes `<name>.png` per lesson and `lessons.md`; returns the paths.

  Every file is written atomically (`outputs.atomic_write_bytes`).

  Raises:
    errors.OutputError: `directory` cannot be created or written.
  """
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    raise errors.OutputError(
        f'cannot create the report directory {directory} '
        f'({e.strerror or e})') from None
  written, sections = [], []
  for result in results:
    path = os.path.join(directory, f'{result.name}.png')
    try:
      outputs.atomic_write_bytes(path, png_bytes(result))
    except OSError as e:
      raise errors.OutputError(
          f'cannot write {path} ({e.strerror or e})') from None
    written.append(path)
    sections.append(f'## {result.title}\n\n{result.numbers()}\n\n'
                    f'![{result.title}]({result.name}.png)\n')
  text = ('# Federated regression lessons\n\n' + summary_table(results) + '\n'
          + '\n'.join(sections))
  markdown = os.path.join(directory, 'lessons.md')
  try:
    outputs.atomic_write_text(markdown, text)
  except OSError as e:
    raise errors.OutputError(
        f'cannot write {markdown} ({e.strerror or e})') from None
  written.append(markdown)
  return written

