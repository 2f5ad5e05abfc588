"""Reading run folders: summary tables now, sweep reports later. Imports no training code."""
