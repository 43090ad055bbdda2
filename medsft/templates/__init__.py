"""Named chat templates shipped with medsft (medsft/chat_templates.py reads them)."""
