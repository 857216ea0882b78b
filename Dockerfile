# The image the Astro CLI builds (`astro dev start`, `astro deploy`). The Astro Runtime image brings
# Airflow, and its ONBUILD steps install packages.txt (apt), then requirements.txt (pip), and copy the
# project into /usr/local/airflow. Airflow is pinned once, in requirements-airflow.txt: pick the Runtime
# release that ships that Airflow version; the check below refuses to build an image where they differ.
FROM astrocrpublic.azurecr.io/runtime:3.3-2

# The consent_gate package (include/consent_gate) itself: the DAGs import `consent_gate`, and the
# `consent-gate` command is the operators' tool. Its dependencies came with requirements.txt.
RUN pip install --no-cache-dir --no-deps /usr/local/airflow \
 && python -c "import pathlib, re, airflow; \
pin = re.search(r'^apache-airflow==(\S+)', pathlib.Path('/usr/local/airflow/requirements-airflow.txt').read_text(), re.M).group(1); \
assert airflow.__version__ == pin, f'the Runtime has Airflow {airflow.__version__}; requirements-airflow.txt pins {pin}'"
