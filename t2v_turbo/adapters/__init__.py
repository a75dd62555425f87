"""Teacher adapters: one file per teacher family, all behind ``TeacherAdapter``."""

from t2v_turbo.adapters.base import TeacherAdapter

__all__ = ["TeacherAdapter"]
