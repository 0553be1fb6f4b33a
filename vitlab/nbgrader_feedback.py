"""nbgrader feedback that does not give the hidden tests away (used by `vitlab course init`'s config).

Stock `nbgrader generate_feedback` renders the autograded notebooks, in which the hidden tests are
back in the test cells; and when a hidden test fails, IPython's traceback quotes the lines around
the failing one. This preprocessor removes the hidden test regions (nbgrader's own ClearHiddenTests)
and cuts the error output of every graded test cell down to its message — the check's report.
"""
from nbgrader import utils
from nbgrader.preprocessors import ClearHiddenTests


class ClearHiddenTestsFromFeedback(ClearHiddenTests):
    def preprocess_cell(self, cell, resources, cell_index):
        cell, resources = super().preprocess_cell(cell, resources, cell_index)
        if cell.cell_type == "code" and utils.is_grade(cell):
            for output in cell.get("outputs", []):
                if output.output_type == "error":
                    output.traceback = [f"{output.ename}: {output.evalue}"]
        return cell, resources
