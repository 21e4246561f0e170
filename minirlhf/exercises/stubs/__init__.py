"""The files `minirlhf exercises init DIR` copies for a student to fill in (one function each).

They are not used by the package; each file's docstring states the maths, the shapes and the
paper, and its body raises NotImplementedError until the student replaces it.
"""
