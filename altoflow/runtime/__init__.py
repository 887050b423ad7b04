"""Runtimes: the in-process reference executor (``local``) and the pure progress tracker."""
