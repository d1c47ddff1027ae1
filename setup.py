"""compass-pilot: a pluggable pilot and edge-service library for COMPASS production through PanDA."""

from setuptools import find_packages, setup

setup(
    name="compass-pilot",
    version="0.1.0",
    description="Grid and multi-job HPC pilot, Harvester plugins and embedded PanDA dispatcher for COMPASS",
    python_requires=">=3.11",
    packages=find_packages(include=["compass_pilot*", "harvester_plugins*", "hpc*", "calibdb*"]),
    package_data={"compass_pilot": ["demo/data/*"], "calibdb": ["data/*"]},
    include_package_data=True,
    install_requires=["requests>=2.28", "pyyaml>=6", "psutil>=5.9"],
    extras_require={
        "mpi": ["mpi4py>=3.1"],
        "saga": ["radical.saga>=1.90"],
        "mysql": ["pymysql>=1.0"],
        # the tests launch node agents with a real MPI: the mpich wheel's hydra mpiexec and libmpi
        # (a site uses its own MPI — Cray MPICH under aprun — through the `mpi` extra alone)
        "test": [
            "pytest>=7",
            "pytest-mock>=3",
            "hypothesis>=6",
            "ruff",
            "cryptography>=41",
            "mpich>=4",
            "prometheus-client>=0.17",
        ],
    },
    entry_points={"console_scripts": ["compass-pilot=compass_pilot.cli:main"]},
)
