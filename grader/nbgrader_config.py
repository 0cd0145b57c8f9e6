"""nbgrader settings of the course. The grading driver (python -m grader) loads this file into a
scratch workspace; `make labs` uses it with the repository as the course root."""
c = get_config()  # noqa: F821 (provided by nbgrader)

c.CourseDirectory.course_id = "xai-labs"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "labs"

c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

# Grading: a cell may run for 30 s (checks stop themselves earlier); deleted test cells come back.
c.Execute.timeout = 30
c.Execute.interrupt_on_timeout = True
c.OverwriteCells.add_missing_cells = True
c.GenerateFeedback.force = True
