"""Named chat templates shipped with medsft (medsft/model/chat_templates.py reads them)."""
