# A grading worker for a Dask cluster: the course's pinned environment plus the bubblewrap sandbox.
#   docker build -f grader/worker.Dockerfile -t xai-grader .
#   docker run -d --privileged xai-grader dask worker tcp://SCHEDULER:8786 --nworkers 2 --nthreads 1
# (--privileged, or at least unprivileged user namespaces, lets bwrap build the sandbox; the driver
#  refuses to grade on a worker without it.) Start the scheduler with `dask scheduler` on any machine
# that has this environment, then on the instructor's machine:
#   python -m grader grade SUBMISSIONS --scheduler tcp://SCHEDULER:8786
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap make util-linux \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /course
COPY . /course
RUN make venv PYTHON=python3.11
ENV PATH=/course/.venv/bin:$PATH PYTHONPATH=/course HF_HUB_OFFLINE=1
