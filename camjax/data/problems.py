"""Problems with one item of a file-based dataset, and where they go.

Every per-item check of the listings (folders.py, boxes.py) and the image
decode raise a `DataProblem`: one line naming the file (`file:line` where
there is one) and a `kind` that groups it in `--mode=check`'s table. The
listings run their checks under `Problems.catch`, so each check has one owner
and two behaviours: opening a dataset (`Problems()`) stops at the first
problem, a CamjaxError; the data check (`Problems(collect=True)`) records
every one and carries on without the item. A problem with the layout itself
(a missing split directory, a CSV without a header) is a plain CamjaxError in
both: there is nothing to carry on with.
"""

import contextlib

from camjax.errors import CamjaxError

CORRUPT_IMAGE = 'corrupt image'
EMPTY_CLASS = 'empty class'
MISSING_FILE = 'missing file'
BAD_LINE = 'bad line'
BAD_BOX = 'bad box'
BAD_ATTRIBUTE_VALUE = 'bad attribute value'
BAD_IMAGE_PATH = 'bad image path'
KINDS = (MISSING_FILE, EMPTY_CLASS, BAD_LINE, BAD_BOX, BAD_ATTRIBUTE_VALUE, BAD_IMAGE_PATH,
         CORRUPT_IMAGE)  # the order of check mode's table


class DataProblem(CamjaxError):
    """One bad item of a dataset: an image, a line of a list file, a class folder."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind

    def __reduce__(self):  # picklable, e.g. from a grain worker process
        return DataProblem, (self.kind, str(self))


class Problems:
    """Where the per-item checks of a listing report: `Problems()` lets the
    first DataProblem propagate; `Problems(collect=True)` keeps every one in
    `found` as (split, problem)."""

    def __init__(self, *, collect: bool = False):
        self.collect = collect
        self.found: list[tuple[str, DataProblem]] = []

    def add(self, split: str, problem: DataProblem) -> None:
        if not self.collect:
            raise problem
        self.found.append((split, problem))

    @contextlib.contextmanager
    def catch(self, split: str):
        """Runs the block; a DataProblem it raises is `add`ed, so when
        collecting the rest of the block (keeping the item) is skipped."""
        try:
            yield
        except DataProblem as problem:
            self.add(split, problem)

    def checked(self, split: str, check, *args):
        """check(*args), or None when it raised a DataProblem that was collected."""
        with self.catch(split):
            return check(*args)
        return None


RAISE_FIRST = Problems()  # the open path's: never collects, so safe to share
