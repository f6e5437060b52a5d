"""This repository's pipeline: params.yaml → configs, family dispatch for the notebooks, evaluation
records, reports, studies, plots and paths. The library (`ddo_lib` outside this package) never imports it."""
