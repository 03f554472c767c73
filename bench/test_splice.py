"""bench/splice.py keeps what people wrote: run by scripts/test.sh (python3 -m unittest bench/test_splice.py)."""
import os
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from splice import splice  # noqa: E402

RESULTS = """# Benchmark results

<!-- wrk:start -->
| old figures |
<!-- wrk-reading:start -->
Read by hand on a day.
<!-- wrk-reading:end -->
<!-- wrk:end -->

<!-- multicore:start -->
| from another machine |
<!-- multicore:end -->
"""


class SpliceTest(unittest.TestCase):
    def test_a_rerun_replaces_the_figures_and_keeps_the_reading_and_other_sections(self):
        text = splice(RESULTS, "wrk", "| new figures |\n")
        self.assertNotIn("old figures", text)
        self.assertIn("| new figures |", text)
        self.assertIn("Read by hand on a day.", text)
        self.assertIn("| from another machine |", text)
        # The reading stays inside its section, after the new figures.
        self.assertLess(text.index("new figures"), text.index("Read by hand"))
        self.assertLess(text.index("Read by hand"), text.index("<!-- wrk:end -->"))

    def test_rerunning_twice_gives_the_same_file(self):
        once = splice(RESULTS, "wrk", "| new figures |\n")
        self.assertEqual(once, splice(once, "wrk", "| new figures |\n"))

    def test_a_missing_section_is_added_at_the_end(self):
        text = splice(RESULTS, "catalogue", "| catalogue |")
        self.assertTrue(text.endswith("<!-- catalogue:start -->\n| catalogue |\n<!-- catalogue:end -->\n"))
        self.assertIn("| old figures |", text)

    def test_an_empty_section_leaves_the_file_as_it_was(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "RESULTS.md")
            with open(path, "w") as f:
                f.write(RESULTS)
            script = os.path.join(os.path.dirname(__file__), "splice.py")
            run = subprocess.run([sys.executable, script, "wrk", path], input="\n", capture_output=True, text=True)
            self.assertNotEqual(run.returncode, 0)
            self.assertIn("nothing to write", run.stderr)
            with open(path) as f:
                self.assertEqual(f.read(), RESULTS)


if __name__ == "__main__":
    unittest.main()
