"""One self-contained HTML page: headings, paragraphs, tables, PNG figures
embedded as data URIs and preformatted text (configs). No external files, so
the page can be mailed or archived as it is."""

import base64
import html


class Report:
    def __init__(self, title: str):
        self._title = title
        self._parts = [f'<h1>{html.escape(title)}</h1>']
        self.figures: list[tuple[str, bytes]] = []  # (caption, PNG), in page order

    def heading(self, text: str) -> None:
        self._parts.append(f'<h2>{html.escape(text)}</h2>')

    def paragraph(self, text: str, *, strong: bool = False) -> None:
        body = html.escape(text)
        self._parts.append(f'<p>{"<strong>" + body + "</strong>" if strong else body}</p>')

    def table(self, rows: list[dict], columns: list[str] | None = None) -> None:
        """Rows of {column: value}; columns default to the first row's keys."""
        if not rows:
            self._parts.append('<p><em>(empty)</em></p>')
            return
        columns = columns or list(rows[0])
        head = ''.join(f'<th>{html.escape(str(c))}</th>' for c in columns)
        body = ''.join('<tr>' + ''.join(f'<td>{html.escape(_cell(row.get(c)))}</td>'
                                        for c in columns) + '</tr>' for row in rows)
        self._parts.append(f'<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')

    def figure(self, png: bytes, caption: str) -> None:
        self.figures.append((caption, png))
        data = base64.b64encode(png).decode('ascii')
        self._parts.append(f'<figure><img src="data:image/png;base64,{data}" '
                           f'alt="{html.escape(caption, quote=True)}"><figcaption>'
                           f'{html.escape(caption)}</figcaption></figure>')

    def preformatted(self, text: str, *, summary: str) -> None:
        self._parts.append(f'<details><summary>{html.escape(summary)}</summary><pre>'
                           f'{html.escape(text)}</pre></details>')

    def html(self) -> str:
        style = ('body{font-family:sans-serif;max-width:1200px;margin:2em auto}'
                 'table{border-collapse:collapse;margin:1em 0}'
                 'td,th{border:1px solid #bbb;padding:2px 8px;text-align:right}'
                 'img{max-width:100%}figure{margin:1em 0}')
        return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<title>{html.escape(self._title)}</title><style>{style}</style></head>'
                '<body>\n' + '\n'.join(self._parts) + '\n</body></html>\n')


def _cell(value) -> str:
    if value is None:
        return ''
    if isinstance(value, float):
        return f'{value:.4g}'
    return str(value)
