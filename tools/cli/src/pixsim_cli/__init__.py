"""The pixsim command-line client."""
