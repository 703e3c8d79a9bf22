"""`make bench`: every layer of the serving path measured in one run on the same images (see __main__)."""
